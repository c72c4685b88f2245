//! `/api/v1/usecases`: use cases with their business KPIs, the stage each has reached, the
//! gate to the next stage judged on measured KPIs, and the recorded stage decisions.
//!
//! Owns the [`KpiMeter`] interface (implemented where the store and the alerts are known) and
//! the rules of a stage change: one gate at a time, a promotion only through a passed gate
//! unless forced with a reason, a step back always with a reason.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use fabrik_registry::Registry;
use fabrik_registry::usecases::{
    GateReport, Kpi, KpiMeasure, KpiValue, Stage, StageChange, StageDecision, UseCase,
    UseCaseDefinition, describe, judge_gate, parse_time,
};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::control::{created_or_replaced, named_definition};
use crate::error::ApiError;
use crate::extract::Query;
use crate::{ApiState, Identity};

/// Measures KPIs; the binary implements it over the store and the alerts.
pub trait KpiMeter: Send + Sync {
    /// Problems of the SQL a definition carries (conditions, signals, filters), by field.
    fn check(&self, definition: UseCaseDefinition) -> BoxFuture<'_, Vec<(String, String)>>;
    /// One KPI over `[from_ns, to_ns)` on `devices` (`None`: every device). A failure is a
    /// measure with its reason, not an error: the other KPIs still count.
    fn measure(
        &self,
        kpi: Kpi,
        devices: Option<Vec<String>>,
        from_ns: i64,
        to_ns: i64,
    ) -> BoxFuture<'_, KpiMeasure>;
    /// The devices other nodes register, as their edges mirrored them here (a hub's
    /// `_devices`, decision 0036), for scopes by site, type and label; none but on a hub.
    fn fleet_devices(&self) -> BoxFuture<'_, Result<Vec<fabrik_registry::FleetDevice>, String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// The fleet's devices, once per request: a hub that cannot read them answers so rather than
/// scope its use cases to its own registry without a word.
async fn fleet(state: &ApiState) -> Result<Vec<fabrik_registry::FleetDevice>, ApiError> {
    match state.kpi_meter.as_ref() {
        Some(meter) => meter.fleet_devices().await.map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the fleet's devices (`_devices`) could not be read: {e}"),
            )
        }),
        None => Ok(Vec::new()),
    }
}

/// The devices a use case's stage selects, this node's registry and the fleet's mirrored
/// devices together.
async fn stage_devices(
    state: &ApiState,
    use_case: &UseCase,
) -> Result<Option<Vec<String>>, ApiError> {
    let fleet = fleet(state).await?;
    Ok(registry(state)?.stage_devices_in(use_case, &fleet).await?)
}

/// A use case, the devices its stage lets its pipelines score now, and those pipelines.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UseCaseView {
    /// The use case.
    #[serde(flatten)]
    pub use_case: UseCase,
    /// The devices its pipelines may score at its stage; absent at enterprise (no limit).
    pub devices: Option<Vec<String>>,
    /// The pipelines of this process that name it.
    pub pipelines: Vec<String>,
}

/// KPIs measured over a period on the use case's devices.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KpiReport {
    /// The use case.
    pub use_case: String,
    /// Its stage.
    pub stage: Stage,
    /// Start of the period (RFC 3339).
    pub from: String,
    /// End of the period (RFC 3339).
    pub to: String,
    /// The devices measured; absent: every device.
    pub devices: Option<Vec<String>>,
    /// Each KPI, beside its baseline and target.
    pub kpis: Vec<KpiValue>,
}

/// The period of a KPI report.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PeriodParams {
    /// Start (RFC 3339); default: when the use case entered its stage.
    pub from: Option<String>,
    /// End (RFC 3339); default: now.
    pub to: Option<String>,
}

/// Longest reason a stage decision keeps.
pub const MOST_REASON_CHARS: usize = 2_000;

/// Most buckets a KPI history is cut into: each is a query per KPI.
const MOST_BUCKETS: u32 = 60;
/// Most queries one history request runs (buckets × KPIs), one after another.
const MOST_HISTORY_QUERIES: u32 = 480;

/// The period of a KPI history and how many equal buckets it is cut into.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Start (RFC 3339); default: when the use case entered its stage.
    pub from: Option<String>,
    /// End (RFC 3339); default: now.
    pub to: Option<String>,
    /// Equal buckets between them, 1 to 60; default 12.
    pub buckets: Option<u32>,
}

/// One KPI, bucket by bucket.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KpiTrend {
    /// The KPI's name.
    pub name: String,
    /// Its unit.
    pub unit: String,
    /// Which way it improves.
    pub better: fabrik_registry::usecases::Better,
    /// Its value in each bucket (`null`: nothing to measure there).
    pub values: Vec<Option<f64>>,
    /// The evidence of each value.
    pub evidence: Vec<f64>,
}

/// KPIs over consecutive buckets of a period, on the stage's devices.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KpiHistory {
    /// The use case.
    pub use_case: String,
    /// Its stage.
    pub stage: Stage,
    /// The devices measured; absent: every device.
    pub devices: Option<Vec<String>>,
    /// Each bucket's start (RFC 3339); the last ends at `to`.
    pub bucket_starts: Vec<String>,
    /// End of the period (RFC 3339).
    pub to: String,
    /// Each KPI's values, one per bucket.
    pub kpis: Vec<KpiTrend>,
}

/// A request to move a use case to another stage.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StageRequest {
    /// The stage the decision was made on, as the caller saw it; 409 if it is no longer.
    pub from: Stage,
    /// The stage to enter: the next one (through its gate) or an earlier one (a step back).
    pub to: Stage,
    /// Why, in the decider's words; kept with the decision.
    pub reason: String,
    /// Promote although the gate did not pass (recorded as forced).
    #[serde(default)]
    pub force: bool,
}

/// The release repository that installed use case `name` on this node, if one did.
fn released_by(state: &ApiState, name: &str) -> Option<String> {
    let board = state.updates.read();
    let status = board.as_ref()?;
    status
        .targets
        .iter()
        .any(|target| {
            target.kind == "use-case" && target.name == name && target.state == "installed"
        })
        .then(|| status.repository.clone())
}

fn registry(state: &ApiState) -> Result<&Registry, ApiError> {
    state.registry.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the registry module does not run in this process (see --target)",
        )
    })
}

fn meter(state: &ApiState) -> Result<&Arc<dyn KpiMeter>, ApiError> {
    state.kpi_meter.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "KPIs are measured where the store runs (see --target)",
        )
    })
}

/// The pipelines of this process naming `name`.
fn pipelines_of(state: &ApiState, name: &str) -> Vec<String> {
    state.pipelines.as_ref().map_or_else(Vec::new, |board| {
        board
            .read()
            .values()
            .filter(|p| p.definition.use_case.as_deref() == Some(name))
            .map(|p| p.name.clone())
            .collect()
    })
}

async fn view(state: &ApiState, use_case: UseCase) -> Result<UseCaseView, ApiError> {
    let fleet = fleet(state).await?;
    view_in(state, use_case, &fleet).await
}

async fn view_in(
    state: &ApiState,
    use_case: UseCase,
    fleet: &[fabrik_registry::FleetDevice],
) -> Result<UseCaseView, ApiError> {
    let devices = registry(state)?.stage_devices_in(&use_case, fleet).await?;
    let pipelines = pipelines_of(state, &use_case.name);
    Ok(UseCaseView {
        use_case,
        devices,
        pipelines,
    })
}

fn now_ns() -> i64 {
    fabrik_core::Timestamp::now().nanos()
}

/// Each KPI of `definition` over the period and over its baseline, on `devices`.
async fn measure_all(
    meter: &dyn KpiMeter,
    definition: &UseCaseDefinition,
    devices: &Option<Vec<String>>,
    from_ns: i64,
    to_ns: i64,
) -> Vec<KpiValue> {
    let baseline = definition
        .baseline
        .as_ref()
        .and_then(|b| Some((parse_time(&b.from).ok()?, parse_time(&b.to).ok()?)));
    let mut values = Vec::with_capacity(definition.kpis.len());
    for kpi in &definition.kpis {
        let current = meter
            .measure(kpi.clone(), devices.clone(), from_ns, to_ns)
            .await;
        let before = match baseline {
            Some((from, to)) => Some(meter.measure(kpi.clone(), devices.clone(), from, to).await),
            None => None,
        };
        values.push(KpiValue::of(kpi, current, before));
    }
    values
}

/// The gate out of the use case's stage, judged on KPIs measured since it entered it.
async fn judge(state: &ApiState, use_case: &UseCase) -> Result<Option<GateReport>, ApiError> {
    let Some(_) = use_case.stage.next() else {
        return Ok(None);
    };
    let since = parse_time(&use_case.stage_since).map_err(ApiError::bad_request)?;
    let now = now_ns();
    let devices = stage_devices(state, use_case).await?;
    let kpis = measure_all(
        meter(state)?.as_ref(),
        &use_case.definition,
        &devices,
        since,
        now,
    )
    .await;
    Ok(judge_gate(
        &use_case.definition,
        use_case.stage,
        since,
        now,
        kpis,
    ))
}

#[utoipa::path(get, path = "/api/v1/usecases", tag = "usecases", security(("token" = [])),
    responses((status = 200, description = "every use case with its stage and devices", body = [UseCaseView]),
              (status = 503, description = "the registry module does not run here", body = crate::error::ErrorBody)))]
pub(crate) async fn list(
    Query(_options): Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
) -> Result<Json<Vec<UseCaseView>>, ApiError> {
    let mut views = Vec::new();
    let fleet = fleet(&state).await?;
    for use_case in registry(&state)?.use_cases().await? {
        views.push(view_in(&state, use_case, &fleet).await?);
    }
    Ok(Json(views))
}

#[utoipa::path(get, path = "/api/v1/usecases/{name}", tag = "usecases", security(("token" = [])),
    params(("name" = String, Path, description = "use case name")),
    responses((status = 200, description = "the use case", body = UseCaseView),
              (status = 404, description = "no such use case", body = crate::error::ErrorBody)))]
pub(crate) async fn show(
    Query(_options): Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<UseCaseView>, ApiError> {
    let use_case = registry(&state)?.use_case(&name).await?;
    Ok(Json(view(&state, use_case).await?))
}

#[utoipa::path(put, path = "/api/v1/usecases/{name}", tag = "usecases", security(("token" = [])),
    params(("name" = String, Path, description = "use case name; must equal `name` in the body")),
    request_body(content = UseCaseDefinition, description = "the use case: objective, owner, scopes, KPIs, baseline, gates"),
    responses((status = 201, description = "defined; it starts in pilot", body = UseCaseView),
              (status = 200, description = "redefined; its stage is kept", body = UseCaseView),
              (status = 400, description = "invalid definition; the message names each field", body = crate::error::ErrorBody)))]
pub(crate) async fn put(
    Query(_options): Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<axum::response::Response, ApiError> {
    let definition: UseCaseDefinition =
        named_definition(&body, &name, "use case", |d: &UseCaseDefinition| &d.name)?;
    let mut problems = definition.problems();
    // The SQL is checked where it runs; a registry on its own stores what it can check.
    if let Some(meter) = &state.kpi_meter {
        problems.extend(meter.check(definition.clone()).await);
    }
    if !problems.is_empty() {
        return Err(ApiError::bad_request(describe(&problems)));
    }
    let (use_case, created) = registry(&state)?.put_use_case(definition).await?;
    Ok((
        created_or_replaced(created),
        Json(view(&state, use_case).await?),
    )
        .into_response())
}

#[utoipa::path(delete, path = "/api/v1/usecases/{name}", tag = "usecases", security(("token" = [])),
    params(("name" = String, Path, description = "use case name")),
    responses((status = 204, description = "removed; its stage decisions stay on record"),
              (status = 404, description = "no such use case", body = crate::error::ErrorBody),
              (status = 409, description = "pipelines still name it", body = crate::error::ErrorBody)))]
pub(crate) async fn remove(
    Query(_options): Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let pipelines = pipelines_of(&state, &name);
    if !pipelines.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "pipelines {} name use case `{name}`: change them first",
                pipelines.join(", ")
            ),
        ));
    }
    registry(&state)?.remove_use_case(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/usecases/{name}/kpis", tag = "usecases", security(("token" = [])),
    params(("name" = String, Path, description = "use case name"), PeriodParams),
    responses((status = 200, description = "each KPI over the period on the stage's devices, beside its baseline and target", body = KpiReport),
              (status = 400, description = "a time is not RFC 3339, or `to` is not after `from`", body = crate::error::ErrorBody),
              (status = 404, description = "no such use case", body = crate::error::ErrorBody)))]
pub(crate) async fn kpis(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(period): Query<PeriodParams>,
) -> Result<Json<KpiReport>, ApiError> {
    let registry = registry(&state)?;
    let use_case = registry.use_case(&name).await?;
    let (from, to) = requested_period(&use_case, period.from.as_deref(), period.to.as_deref())?;
    let (stage, devices) = (use_case.stage, stage_devices(&state, &use_case).await?);
    let kpis = measure_all(
        meter(&state)?.as_ref(),
        &use_case.definition,
        &devices,
        from,
        to,
    )
    .await;
    Ok(Json(KpiReport {
        use_case: name,
        stage,
        from: fabrik_registry::usecases::format_time(from),
        to: fabrik_registry::usecases::format_time(to),
        devices,
        kpis,
    }))
}

/// `from`/`to` of a request, defaults filled in: from the stage's start until now.
fn requested_period(
    use_case: &UseCase,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(i64, i64), ApiError> {
    let time = |field: &str, text: &str| {
        parse_time(text).map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
    };
    let from = time("from", from.unwrap_or(&use_case.stage_since))?;
    let to = match to {
        Some(text) => time("to", text)?,
        None => now_ns(),
    };
    if to <= from {
        return Err(ApiError::bad_request("to: must be after `from`"));
    }
    Ok((from, to))
}

#[utoipa::path(get, path = "/api/v1/usecases/{name}/kpis/history", tag = "usecases", security(("token" = [])),
    params(("name" = String, Path, description = "use case name"), HistoryParams),
    responses((status = 200, description = "each KPI in equal buckets of the period, on the stage's devices", body = KpiHistory),
              (status = 400, description = "a time is not RFC 3339, `to` is not after `from`, buckets is not 1 to 60, the period is shorter than its buckets in ns, or buckets × KPIs is over 480", body = crate::error::ErrorBody),
              (status = 404, description = "no such use case", body = crate::error::ErrorBody)))]
pub(crate) async fn history(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(params): Query<HistoryParams>,
) -> Result<Json<KpiHistory>, ApiError> {
    let registry = registry(&state)?;
    let use_case = registry.use_case(&name).await?;
    let (from, to) = requested_period(&use_case, params.from.as_deref(), params.to.as_deref())?;
    let buckets = params.buckets.unwrap_or(12);
    if !(1..=MOST_BUCKETS).contains(&buckets) {
        return Err(ApiError::bad_request(format!(
            "buckets: {buckets}; 1 to {MOST_BUCKETS}"
        )));
    }
    let kpi_count = use_case.definition.kpis.len().max(1) as u32;
    if buckets * kpi_count > MOST_HISTORY_QUERIES {
        return Err(ApiError::bad_request(format!(
            "buckets: {buckets} buckets of {kpi_count} KPIs are {} queries; at most \
             {MOST_HISTORY_QUERIES}: ask for fewer buckets",
            buckets * kpi_count
        )));
    }
    // In i128: the span of two valid times can exceed i64, and each edge is exact, the
    // last one `to` itself.
    let span = i128::from(to) - i128::from(from);
    if span < i128::from(buckets) {
        return Err(ApiError::bad_request(format!(
            "buckets: {buckets} buckets do not fit in {span} ns"
        )));
    }
    let edges: Vec<i64> = (0..=buckets)
        .map(|i| {
            let edge = i128::from(from) + span * i128::from(i) / i128::from(buckets);
            i64::try_from(edge).unwrap_or(to)
        })
        .collect();
    let (stage, devices) = (use_case.stage, stage_devices(&state, &use_case).await?);
    let meter = meter(&state)?;
    let mut kpis = Vec::with_capacity(use_case.definition.kpis.len());
    for kpi in &use_case.definition.kpis {
        let mut trend = KpiTrend {
            name: kpi.name.clone(),
            unit: kpi.unit(),
            better: kpi.better(),
            values: Vec::with_capacity(edges.len() - 1),
            evidence: Vec::with_capacity(edges.len() - 1),
        };
        for window in edges.windows(2) {
            let measure = meter
                .measure(kpi.clone(), devices.clone(), window[0], window[1])
                .await;
            trend.values.push(measure.value);
            trend.evidence.push(measure.evidence);
        }
        kpis.push(trend);
    }
    Ok(Json(KpiHistory {
        use_case: name,
        stage,
        devices,
        bucket_starts: edges[..edges.len() - 1]
            .iter()
            .map(|&t| fabrik_registry::usecases::format_time(t))
            .collect(),
        to: fabrik_registry::usecases::format_time(to),
        kpis,
    }))
}

#[utoipa::path(get, path = "/api/v1/usecases/{name}/gate", tag = "usecases", security(("token" = [])),
    params(("name" = String, Path, description = "use case name")),
    responses((status = 200, description = "the gate to the next stage, judged on the KPIs measured since the use case entered its stage", body = GateReport),
              (status = 404, description = "no such use case", body = crate::error::ErrorBody),
              (status = 409, description = "at enterprise: there is no further gate", body = crate::error::ErrorBody)))]
pub(crate) async fn gate(
    Query(_options): Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<GateReport>, ApiError> {
    let use_case = registry(&state)?.use_case(&name).await?;
    judge(&state, &use_case).await?.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("use case `{name}` is at enterprise: there is no further gate"),
        )
    })
}

#[utoipa::path(post, path = "/api/v1/usecases/{name}/stage", tag = "usecases", security(("token" = [])),
    params(("name" = String, Path, description = "use case name")),
    request_body(content = StageRequest),
    responses((status = 200, description = "moved; the decision as recorded, with the gate as judged", body = StageDecision),
              (status = 400, description = "no reason given", body = crate::error::ErrorBody),
              (status = 404, description = "no such use case", body = crate::error::ErrorBody),
              (status = 409, description = "the gate did not pass (the message lists the checks that failed), the stage is skipped or already reached, another change came first, or this node's release repository sets the stage", body = crate::error::ErrorBody)))]
pub(crate) async fn change_stage(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Extension(identity): Extension<Identity>,
    body: Bytes,
) -> Result<Json<StageDecision>, ApiError> {
    let request: StageRequest = crate::control::parse_body(&body, "stage change")?;
    if request.reason.trim().is_empty() {
        return Err(ApiError::bad_request(
            "reason: say why the stage changes; it is kept with the decision",
        ));
    }
    let length = request.reason.chars().count();
    if length > MOST_REASON_CHARS {
        return Err(ApiError::bad_request(format!(
            "reason: {length} characters; at most {MOST_REASON_CHARS}"
        )));
    }
    let registry = registry(&state)?;
    let use_case = registry.use_case(&name).await?;
    let conflict = |text: String| ApiError::new(StatusCode::CONFLICT, "conflict", text);
    // A stage this node's release repository sets would be put back at its next check: the
    // decision is the fleet's, made where the release is published.
    if let Some(repository) = released_by(&state, &name) {
        return Err(conflict(format!(
            "use case `{name}` is released from {repository}, which sets its stage on this \
             node: change it there (`fabrik release add --kind use-case --stage …`)"
        )));
    }
    let from = use_case.stage;
    if request.from != from {
        return Err(conflict(format!(
            "use case `{name}` is at {}, not {} as the request says: look again",
            from.display(),
            request.from.display()
        )));
    }
    let gate = if request.to == from {
        return Err(conflict(format!(
            "use case `{name}` is at {} already",
            from.display()
        )));
    } else if request.to < from {
        // A step back (a pilot that went wrong at scale) needs no gate.
        None
    } else if Some(request.to) != from.next() {
        return Err(conflict(format!(
            "use case `{name}` is at {}: it passes one gate at a time, to {}",
            from.display(),
            from.next().map_or("nothing", Stage::display)
        )));
    } else {
        let report = judge(&state, &use_case)
            .await?
            .ok_or_else(|| conflict("no further gate".into()))?;
        if !report.passed && !request.force {
            let failed: Vec<String> = report
                .checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| format!("{} (measured {})", c.criterion, c.measured_text))
                .collect();
            let why = if report.checks.is_empty() {
                "the gate has no criteria".to_owned()
            } else {
                format!("not met: {}", failed.join("; "))
            };
            return Err(conflict(format!(
                "the gate from {} to {} did not pass: {why}. Promote with `force` and a \
                 reason to override it on record",
                from.display(),
                request.to.display()
            )));
        }
        Some(report)
    };
    let forced = gate.as_ref().is_some_and(|g| !g.passed);
    let change = StageChange {
        from,
        since: use_case.stage_since.clone(),
        updated_at: use_case.updated_at.clone(),
        to: request.to,
        actor: identity.name.clone(),
        forced,
        reason: request.reason.trim().to_owned(),
        gate,
    };
    Ok(Json(registry.change_stage(&name, change).await?))
}

#[utoipa::path(get, path = "/api/v1/usecases/{name}/decisions", tag = "usecases", security(("token" = [])),
    params(("name" = String, Path, description = "use case name")),
    responses((status = 200, description = "its stage decisions, oldest first (kept after it is removed)", body = [StageDecision])))]
pub(crate) async fn decisions(
    Query(_options): Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<StageDecision>>, ApiError> {
    Ok(Json(registry(&state)?.stage_decisions(&name).await?))
}
